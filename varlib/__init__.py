"""varlib"""
