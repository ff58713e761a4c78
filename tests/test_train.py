"""Training (varlib.train, varlib.optim): the official recipe, checkpoints, resume, DDP, smoke runs.

* Schedules and parameter groups against ``training.pt`` (the official numbers, parity folder).
* Exact resume: a run stopped after its mid-run save and resumed ends bit-identical to one
  that never stopped (weights, optimiser state, history), for the tokenizer and for VAR; the CLI.
* Atomic checkpoints: a save killed half-way leaves the previous ``last.pt`` intact.
* DDP: 2 gloo processes on the CPU follow the 1-process path on the same global batch.
* Smoke runs: the losses fall, dead-code restarts move the unused codes, the token cache
  gives the batches re-encoding gives.

Everything uses the ``tiny`` presets (data "shapes", 16x16) and a handful of steps, with one
CPU thread so that the reduction order, hence every bit, is fixed.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, load, var_config
from varlib import optim
from varlib import train as T
from varlib.model import VAR
from varlib.vqvae import VQVAE, VQVAEConfig


@pytest.fixture(scope="module", autouse=True)
def cpu_one_thread_no_plots():
    """In-process runs: one thread (a fixed reduction order), on the CPU (as the subprocesses, which
    get no CUDA), without the loss plot (a third of their time; the CLI test checks loss.png)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T.torch.cuda, "is_available", lambda: False)
        mp.setattr(T.Trainer, "plot", lambda self: None)
        yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def shapes():
    return T.load_data("shapes")


@pytest.fixture(scope="module")
def small(shapes):
    """The first 64 training images: a token cache (9 shifts) in a fraction of a second."""
    return dataclasses.replace(shapes, train=shapes.train[:64], train_labels=shapes.train_labels[:64])


@pytest.fixture(scope="module")
def tok_run(shapes, tmp_path_factory):
    """A briefly trained tiny tokenizer (restart window 5, logged every step): its trainer and checkpoint."""
    out = tmp_path_factory.mktemp("tok")
    t = T.trainer(T.preset("tokenizer", "tiny", steps=20, save_every=20, restart_every=5, log_every=1),
                  out, progress=False, data=shapes)
    metrics = t.run()
    return t, out / "last.pt", metrics


def run_cfg(cfg, out, data, resume=False):
    t = T.trainer(cfg, out, resume=resume, progress=False, data=data)
    t.run()
    return t


class Killed(Exception):
    pass


def run_killed_after(cfg, out, data, stop_at):
    """Run ``cfg`` but die right after the checkpoint of step ``stop_at`` is written."""
    t = T.trainer(cfg, out, progress=False, data=data)
    save = t.save

    def save_then_die():
        save()
        if t.step == stop_at:
            raise Killed
    t.save = save_then_die
    with pytest.raises(Killed):
        t.run()
    assert t.step == stop_at


def without_rates(history):
    return [{k: v for k, v in h.items() if not k.endswith("_per_s")} for h in history]


def assert_same_run(a: T.Trainer, b: T.Trainer):
    """Bit-identical: weights, optimiser state and hyper-parameters, history (timings aside)."""
    assert a.step == b.step == a.cfg.steps
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"weights differ: {k}"
    oa, ob = a.opt.state_dict(), b.opt.state_dict()
    assert oa["state"].keys() == ob["state"].keys() and len(oa["state"]) > 0
    for i in oa["state"]:
        for key, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][key]), f"optimizer state {i}/{key} differs"
    for ga, gb in zip(oa["param_groups"], ob["param_groups"]):
        assert ga == gb
    assert without_rates(a.history) == without_rates(b.history)
    assert len(a.history) == a.cfg.steps // a.cfg.log_every


# ------------------------------------------------------------- schedules and parameter groups
def schedule_tables():
    return load("training.pt")["lr_wd_schedule"]


def test_schedule_tables_present():
    tables = schedule_tables()
    assert len(tables) >= 1 and all(len(t["rows_it_lr_wd_wdND"]) > 0 for t in tables)


def same(x):
    return pytest.approx(x, rel=1e-9, abs=1e-15)


def test_lr_wd_schedules_match_official():
    """Every row of every table: lr_factor / wd_at, and the same through apply_schedule on a real AdamW."""
    cfg = load("config.pt")
    opt = torch.optim.AdamW(optim.param_groups(VAR(var_config(cfg))), lr=0.0, weight_decay=0.0)
    by_sc = {g["wd_sc"]: g for g in opt.param_groups}
    assert set(by_sc) == {0.0, 1.0}
    n = 0
    for tab in schedule_tables():
        sche, wp_it, max_it, wp0, wpe = tab["sche"], tab["wp_it"], tab["max_it"], tab["wp0"], tab["wpe"]
        for it, lr, wd, wd_nd in tab["rows_it_lr_wd_wdND"]:
            it, where = int(it), f"{sche} (wpe {wpe}, wd {tab['twd']}->{tab['twde']}) at it {it}"
            assert tab["peak_lr"] * optim.lr_factor(sche, it, wp_it, max_it, wp0, wpe) == same(lr), where
            assert optim.wd_at(it, max_it, tab["twd"], tab["twde"]) == same(wd), where
            got = optim.apply_schedule(opt, it, peak_lr=tab["peak_lr"], wd=tab["twd"], wd_end=tab["twde"],
                                       wp_it=wp_it, max_it=max_it, sche=sche, wp0=wp0, wpe=wpe)
            assert got == (same(lr), same(wd)), where
            assert all(g["lr"] == same(lr) for g in opt.param_groups), where
            assert by_sc[1.0]["weight_decay"] == same(wd), where
            assert wd_nd == 0.0 and by_sc[0.0]["weight_decay"] == 0.0, where      # no-decay group: wd_sc 0
            n += 1
    assert n == sum(len(t["rows_it_lr_wd_wdND"]) for t in schedule_tables())


def test_param_groups_match_official():
    cfg, official = load("config.pt"), load("training.pt")["param_groups"]
    model = VAR(var_config(cfg))
    ours = {g["wd_sc"]: g for g in optim.param_groups(model)}
    theirs = {float(g["wd_sc"]): g for g in official}
    assert set(ours) == set(theirs) == {0.0, 1.0}
    for sc in (0.0, 1.0):
        assert set(ours[sc]["names"]) == set(theirs[sc]["params"]), f"wd_sc {sc}"
        assert ours[sc]["lr_sc"] == theirs[sc]["lr_sc"] == 1.0
        params = dict(model.named_parameters())
        assert all(ours[sc]["params"][i] is params[n] for i, n in enumerate(ours[sc]["names"]))
    # every trainable parameter in exactly one group
    assert sorted(ours[0.0]["names"] + ours[1.0]["names"]) == sorted(n for n, _ in model.named_parameters())


@pytest.mark.parametrize("sche", ["cos", "lin", "lin0", "lin00", "lin0.8", "exp"])
@pytest.mark.parametrize("steps,warmup", [(1, 5), (6, 5), (5, 5), (2, 0), (40, 5)])
def test_schedule_short_runs(sche, steps, warmup):
    """Runs with a one-step (or no) decay phase: finite, within [wpe, 1], warm-up from wp0, ends at wpe."""
    fs = [optim.lr_factor(sche, it, warmup, steps, 0.01, 0.05) for it in range(steps)]
    ws = [optim.wd_at(it, steps, 0.05, 0.01) for it in range(steps)]
    assert all(math.isfinite(v) and 0.01 - 1e-12 <= v <= 1 + 1e-12 for v in fs), fs
    assert all(0.01 - 1e-12 <= w <= 0.05 + 1e-12 for w in ws) and ws[0] == pytest.approx(0.05)
    if warmup:
        assert fs[0] == pytest.approx(0.01)
    if steps - 1 - warmup >= 2:
        assert fs[-1] == pytest.approx(0.05) and ws[-1] == pytest.approx(0.01)


# --------------------------------------------------------------------------------- exact resume
def test_resume_tokenizer_bit_exact(shapes, tmp_path):
    # restart window 3 and logging every step: the restart state and the history cross the resume point
    cfg = T.preset("tokenizer", "tiny", steps=6, save_every=3, restart_every=2, log_every=1)
    straight = run_cfg(cfg, tmp_path / "straight", shapes)
    run_killed_after(cfg, tmp_path / "resumed", shapes, stop_at=3)
    resumed = T.trainer(cfg, tmp_path / "resumed", resume=True, progress=False, data=shapes)
    assert resumed.step == 3 and resumed.usage_SV.any()       # mid-window: the usage counts travel
    resumed.run()
    assert_same_run(straight, resumed)
    assert torch.equal(straight.usage_SV, resumed.usage_SV)
    # the file on disk is the final state too
    ck = T.load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert ck["step"] == 6 and all(torch.equal(v, straight.model.state_dict()[k]) for k, v in ck["model"].items())


def test_resume_var_bit_exact(small, tok_run, tmp_path):
    cfg = T.preset("var", "tiny", steps=8, save_every=4, log_every=1, tokenizer=str(tok_run[1]))
    straight = run_cfg(cfg, tmp_path / "straight", small)
    run_killed_after(cfg, tmp_path / "resumed", small, stop_at=4)
    resumed = T.trainer(cfg, tmp_path / "resumed", resume=True, progress=False, data=small)
    assert resumed.step == 4
    resumed.run()
    assert_same_run(straight, resumed)


def test_resume_of_finished_run_is_a_no_op(shapes, tmp_path):
    cfg = T.preset("tokenizer", "tiny", steps=2, save_every=2, log_every=1)
    a = run_cfg(cfg, tmp_path, shapes)
    before = (tmp_path / "last.pt").read_bytes()
    b = T.trainer(cfg, tmp_path, resume=True, progress=False, data=shapes)
    b.run()
    assert b.step == 2 and (tmp_path / "last.pt").read_bytes() == before
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def cli_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MPLBACKEND="Agg", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def cli(*args):
    p = subprocess.run([sys.executable, "-m", "varlib.train", *map(str, args)], cwd=ROOT, env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"python -m varlib.train {' '.join(map(str, args))} failed:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_cli_run_and_resume(tmp_path):
    out = tmp_path / "run"
    first = cli("tokenizer", "--preset", "tiny", "--out", out, "--steps", 6, "--save-every", 3, "--no-progress")
    assert first["step"] == 6 and T.load_checkpoint(out / "last.pt")["step"] == 6
    second = cli("tokenizer", "--preset", "tiny", "--out", out, "--steps", 8, "--save-every", 3, "--no-progress",
                 "--resume")
    assert second["step"] == 8 and 0 < second["codebook_usage"] <= 1 and math.isfinite(second["tokenizer_psnr_db"])

    ck = torch.load(out / "last.pt", weights_only=True, map_location="cpu")   # plain tensors and containers
    assert ck["step"] == 8 and ck["kind"] == "tokenizer" and ck["format"] == T.CHECKPOINT_FORMAT
    assert ck["model_config"] == dataclasses.asdict(VQVAEConfig(**T.PRESETS[("tokenizer", "tiny")]["model"]))
    assert ck["train_config"]["steps"] == 8
    model = T.model_from_checkpoint(out / "last.pt")
    assert isinstance(model, VQVAE) and not model.training
    assert all(torch.equal(v, ck["model"][k]) for k, v in model.state_dict().items())

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == [h["step"] for h in ck["history"]] == [5, 6, 8]
    assert all(math.isfinite(h["loss"]) for h in log)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "config.json").read_text())["steps"] == 8
    assert not [p.name for p in out.iterdir() if "tmp" in p.name]


# ----------------------------------------------------------------------------- atomic writes
def test_save_killed_midway_keeps_previous_checkpoint(tok_run, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    T.save_checkpoint(T.load_checkpoint(tok_run[1]), path)
    before = path.read_bytes()
    newer = T.load_checkpoint(path)
    newer["step"] += 1
    newer["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in newer["model"].items()}
    real_save, written = torch.save, []

    def killed_save(obj, f, *args, **kwargs):          # half the bytes reach the disk, then the process dies
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        written.append(len(data) // 2)
        raise Killed("killed mid-save")
    monkeypatch.setattr(T.torch, "save", killed_save)
    with pytest.raises(Killed):
        T.save_checkpoint(newer, path)
    monkeypatch.undo()
    assert written and written[0] > 1000
    assert path.read_bytes() == before
    ck = T.load_checkpoint(path)
    assert ck["step"] == tok_run[0].step
    assert all(torch.equal(v, tok_run[0].model.state_dict()[k]) for k, v in ck["model"].items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "a temporary file was left behind"
    # and a save that completes replaces it
    T.save_checkpoint(newer, path)
    assert T.load_checkpoint(path)["step"] == ck["step"] + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_trainer_save_killed_midway(shapes, tmp_path, monkeypatch):
    """The same through a trainer: its last.pt of step 2 survives a kill during the save of step 4."""
    cfg = T.preset("tokenizer", "tiny", steps=4, save_every=2, log_every=1)
    t = T.trainer(cfg, tmp_path, progress=False, data=shapes)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj["step"] == 4:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
            raise Killed
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(T.torch, "save", save)
    with pytest.raises(Killed):
        t.run()
    monkeypatch.undo()
    assert T.load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert not [p.name for p in tmp_path.iterdir() if "tmp" in p.name]
    # and the run resumes from there
    r = T.trainer(cfg, tmp_path, resume=True, progress=False, data=shapes)
    assert r.step == 2


def test_checkpoint_errors(tok_run, small, tmp_path):
    with pytest.raises(FileNotFoundError):
        T.load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(ValueError, match="not a varlib training checkpoint"):
        T.load_checkpoint(garbage)
    half = tmp_path / "half.pt"
    data = tok_run[1].read_bytes()
    half.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="not a varlib training checkpoint"):
        T.load_checkpoint(half)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="not a varlib training checkpoint"):
        T.load_checkpoint(other)
    with pytest.raises(ValueError, match="not a varlib training checkpoint"):
        T.model_from_checkpoint(other)
    # a VAR run resumed from a folder that holds a tokenizer run
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(data)
    cfg = T.preset("var", "tiny", steps=2, tokenizer=str(tok_run[1]))
    with pytest.raises(ValueError, match="holds a tokenizer run, not a var run"):
        T.trainer(cfg, run, resume=True, progress=False, data=small)
    with pytest.raises(ValueError, match="needs a trained tokenizer"):
        T.trainer(T.preset("var", "tiny", steps=2), run, progress=False, data=small)


# --------------------------------------------------------------------------------------- DDP
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(args, logs, world=2, timeout=240):
    """``python -m varlib.train ARGS`` in ``world`` gloo processes, each with the environment torchrun
    would give it (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), without the launcher's start-up cost.
    Returns rank 0's final JSON line; a failing rank stops the others (no hang in a collective)."""
    env = cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(world),
                  LOCAL_WORLD_SIZE=str(world))
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for r in range(world):
        out, err = open(logs / f"rank{r}.out", "w+"), open(logs / f"rank{r}.err", "w+")
        files += [out, err]
        procs.append(subprocess.Popen([sys.executable, "-m", "varlib.train", *map(str, args)], cwd=ROOT,
                                      env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=out, stderr=err))
    deadline, failed = time.monotonic() + timeout, None
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                failed = "a process failed"
                break
            if time.monotonic() > deadline:
                failed = f"timed out after {timeout} s"
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in files:
            f.close()
    if failed or any(p.returncode for p in procs):
        text = "\n".join(f"--- rank {r} (rc {p.returncode}):\n{(logs / f'rank{r}.err').read_text()[-2500:]}"
                         for r, p in enumerate(procs))
        pytest.fail(f"DDP run: {failed or 'a process failed'}:\n{text}")
    return json.loads((logs / "rank0.out").read_text().strip().splitlines()[-1])


def rms_grad(ck: dict) -> dict:
    """Per parameter name: the largest bias-corrected RMS gradient Adam has seen (sqrt of v_hat)."""
    opt, beta2 = ck["optimizer"], ck["train_config"]["betas"][1]
    out = {}
    for g in opt["param_groups"]:
        for name, i in zip(g["names"], g["params"]):
            s = opt["state"][i]
            out[name] = (s["exp_avg_sq"] / (1 - beta2 ** float(s["step"]))).sqrt().max().item()
    return out


def assert_ddp_matches(one: dict, two: dict, atol=1e-5):
    assert one["step"] == two["step"]
    assert [h["step"] for h in one["history"]] == [h["step"] for h in two["history"]]
    # (the logged losses are rank 0's, of its half of the batch: not compared)
    assert [h["lr"] for h in one["history"]] == [h["lr"] for h in two["history"]]
    g, lr_sum = rms_grad(one), sum(h["lr"] for h in one["history"]) * 10
    noise = []
    for k, a in one["model"].items():
        b = two["model"][k]
        if k in g and g[k] < 1e-6:
            # A parameter whose true gradient is 0 (a conv bias right before a one-channel-per-group
            # GroupNorm, which removes it) gets a gradient of pure rounding noise, and Adam turns the
            # sign of that noise into full +-lr steps: its value is a matter of summation order.
            noise.append(k)
            assert (a - b).abs().max() <= 2 * lr_sum
            continue
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{k}: {m}")
    assert len(noise) <= len(one["model"]) // 10, noise
    assert all(k.endswith("bias") for k in noise), noise


def test_ddp_tokenizer_matches_one_process(shapes, tmp_path):
    steps = 6
    two = run_ddp(["tokenizer", "--preset", "tiny", "--out", tmp_path / "ddp", "--steps", steps,
                   "--save-every", steps, "--no-progress"], tmp_path / "logs")
    one = run_cfg(T.preset("tokenizer", "tiny", steps=steps, save_every=steps), tmp_path / "one", shapes)
    c1, c2 = T.load_checkpoint(tmp_path / "one" / "last.pt"), T.load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert c2["train_config"] == c1["train_config"]
    assert_ddp_matches(c1, c2)
    assert torch.equal(c1["usage_SV"], c2["usage_SV"])       # usage all-reduced over the processes
    # the two models tokenize and reconstruct held-out images alike
    m1, m2 = T.model_from_checkpoint(c1), T.model_from_checkpoint(c2)
    x = shapes.heldout[:32]
    with torch.no_grad():
        i1, i2 = m1.img_to_idx(x), m2.img_to_idx(x)
        assert all(torch.equal(a, b) for a, b in zip(i1, i2))
        torch.testing.assert_close(m1.idx_to_img(i1), m2.idx_to_img(i2), atol=1e-4, rtol=0)
    assert two["tokenizer_psnr_db"] == pytest.approx(one.evaluate()["tokenizer_psnr_db"], abs=1e-3)


def test_ddp_var_matches_one_process(shapes, tok_run, tmp_path):
    steps = 6
    run_ddp(["var", "--preset", "tiny", "--tokenizer", tok_run[1], "--out", tmp_path / "ddp", "--steps", steps,
             "--save-every", steps, "--no-token-cache", "--no-progress"], tmp_path / "logs")
    run_cfg(T.preset("var", "tiny", steps=steps, save_every=steps, tokenizer=str(tok_run[1]), token_cache=False),
            tmp_path / "one", shapes)
    c1, c2 = T.load_checkpoint(tmp_path / "one" / "last.pt"), T.load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert c2["train_config"] == c1["train_config"]
    assert_ddp_matches(c1, c2)


def test_ddp_needs_divisible_batch():
    d = T.Dist(rank=1, world=3)
    with pytest.raises(ValueError, match="divisible"):
        T.local_slice(torch.arange(16), d)
    assert torch.equal(T.local_slice(torch.arange(16), T.Dist(rank=1, world=2)), torch.arange(8, 16))


# --------------------------------------------------------------------------------- smoke runs
def test_tokenizer_learns_and_uses_more_codes(tok_run):
    t, _, metrics = tok_run
    h = t.history
    assert [e["step"] for e in h] == list(range(1, 21))
    first, last = [e["psnr_db"] for e in h[:3]], [e["psnr_db"] for e in h[-3:]]
    assert sum(last) / 3 > sum(first) / 3 + 2, (first, last)
    used = [e["codebook_used"] for e in h if "codebook_used" in e]
    assert used and used[-1] > used[0], used
    assert metrics["tokenizer_psnr_db"] > h[0]["psnr_db"] and 0 < metrics["codebook_usage"] <= 1


def run_watching_restart(t, restart_step: int) -> dict:
    """Run trainer t; around its restart at restart_step record the window's usage and coverage,
    the residuals of that step's batch, the codebook before and after, and the codes' Adam moments."""
    q, seen, after_step = t.model.quantize, {}, t.after_step

    def spy(step):
        if step == restart_step:
            seen["usage"] = t.usage_SV.clone()
            seen["cover"] = t.expected_coverage()
            seen["before"] = q.embedding.weight.detach().clone()
            with torch.no_grad():
                seen["res"] = q.residuals_per_scale(t.model.encode(t.global_batch(step)))
        after_step(step)
        if step == restart_step:
            seen["after"] = q.embedding.weight.detach().clone()
            seen["moments"] = {k: v.clone() for k, v in t.opt.state[q.embedding.weight].items()}
    t.after_step = spy
    t.run()
    return seen


def test_dead_code_restart_moves_unused_codes(shapes, tmp_path):
    cfg = T.preset("tokenizer", "tiny", steps=4, save_every=4, restart_every=4, log_every=1)
    t = T.trainer(cfg, tmp_path, progress=False, data=shapes)
    seen = run_watching_restart(t, 3)
    seen["candidates"] = torch.cat(seen["res"])
    dead = seen["usage"].sum(0) == 0
    assert 0 < dead.sum() < len(dead), "the window should leave some codes unused"
    assert torch.equal(seen["after"][~dead], seen["before"][~dead]), "codes in use must not move"
    assert (seen["after"][dead] != seen["before"][dead]).any(1).all(), "every unused code must move"
    # onto residual vectors of this step's batch
    dist = torch.cdist(seen["after"][dead], seen["candidates"], compute_mode="donot_use_mm_for_euclid_dist")
    assert dist.min(1).values.max() < 1e-5
    # with fresh Adam moments
    for k in ("exp_avg", "exp_avg_sq"):
        assert (seen["moments"][k][dead] == 0).all() and (seen["moments"][k][~dead] != 0).any()
    assert (t.usage_SV == 0).all()      # the window starts again


def test_expected_coverage_formula(shapes, tmp_path):
    cfg = T.preset("tokenizer", "tiny", steps=1, usage_ref=3)
    t = T.trainer(cfg, tmp_path, progress=False, data=shapes)
    V, pns = t.model.cfg.vocab_size, t.model.cfg.patch_nums
    t.usage_SV.zero_()
    t.usage_SV[0, :2] = 5                  # scale 0: two codes, equally often
    t.usage_SV[1:, 0] = 7                  # the others: always code 0
    cover = t.expected_coverage()
    # 3 images give 3 tokens at scale 0: E[distinct] = 2 (1 - 0.5^3) out of min(V, 3) possible
    assert cover[0] == pytest.approx(2 * (1 - 0.5 ** 3) / min(V, 3))
    for c, pn in zip(cover[1:], pns[1:]):
        assert c == pytest.approx(1 / min(V, 3 * pn * pn))


def test_scale_floor_gives_short_scales_least_used_codes(shapes, tmp_path):
    cfg = T.preset("tokenizer", "tiny", steps=4, save_every=4, restart_every=4, log_every=1,
                   scale_floor=0.9, usage_ref=16)
    t = T.trainer(cfg, tmp_path, progress=False, data=shapes)
    seen = run_watching_restart(t, 3)
    hits = seen["usage"].sum(0)
    moved = (seen["after"] != seen["before"]).any(1)
    dead = hits == 0
    assert all(c < 0.9 for c in seen["cover"]), "every scale should be short of a 90% floor"
    assert dead.sum() < moved.sum() < len(moved), "besides the dead codes, some used codes move, not all"
    # the used codes that moved are the least used ones
    assert hits[moved & ~dead].max() <= hits[~moved].min()
    # each moved code sits on a residual of some scale; the coarsest scale got its share
    cand = torch.cat(seen["res"])
    dist = torch.cdist(seen["after"][moved], cand, compute_mode="donot_use_mm_for_euclid_dist")
    assert dist.min(1).values.max() < 1e-5
    d0 = torch.cdist(seen["after"][moved], seen["res"][0], compute_mode="donot_use_mm_for_euclid_dist")
    assert (d0.min(1).values < 1e-5).sum() >= 1
    for k in ("exp_avg", "exp_avg_sq"):   # moved codes start with fresh Adam moments
        assert (seen["moments"][k][moved] == 0).all() and (seen["moments"][k][~moved] != 0).any()
    assert t.window_usage["cover_s0"] == pytest.approx(seen["cover"][0])   # logged from the next step on


def test_var_loss_falls(small, tok_run, tmp_path):
    cfg = T.preset("var", "tiny", steps=24, save_every=24, log_every=1, tokenizer=str(tok_run[1]))
    t = run_cfg(cfg, tmp_path, small)
    losses = [h["loss"] for h in t.history]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
    assert losses[0] == pytest.approx(math.log(t.model.cfg.vocab_size), rel=0.25)   # starts near uniform
    ev = t.evaluate()
    assert math.isfinite(ev["var_val_loss"]) and len(ev["var_val_acc_per_scale"]) == len(t.model.begin_ends)


# ------------------------------------------------------------------------------- token cache
def test_token_cache_matches_reencoding(small, tok_run, tmp_path):
    cfg = T.preset("var", "tiny", steps=4, tokenizer=str(tok_run[1]))
    cached = T.trainer(cfg, tmp_path / "a", progress=False, data=small)
    plain = T.trainer(dataclasses.replace(cfg, token_cache=False), tmp_path / "b", progress=False, data=small)
    assert plain.tokens is None and cached.tokens.shape == (len(T.shift_offsets(cfg.max_shift)), 64,
                                                            sum(p * p for p in cached.vae.cfg.patch_nums))
    # the same tokens for the batches of the first steps
    offs = T.shift_offsets(cfg.max_shift)
    for step in range(3):
        idx, variant, _ = cached.global_batch(step)
        x = torch.stack([T.shift(small.train[i][None], *offs[v])[0] for i, v in zip(idx.tolist(), variant.tolist())])
        with torch.no_grad():
            fresh = torch.cat(cached.vae.img_to_idx(x), 1)
        assert torch.equal(cached.tokens[variant, idx].long(), fresh), f"step {step}"
    # and the same first training step
    assert all(torch.equal(a, b) for a, b in zip(cached.model.state_dict().values(), plain.model.state_dict().values()))
    la, ma, na = cached.train_step(0)
    lb, mb, nb = plain.train_step(0)
    torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
    assert na == nb and ma.keys() == mb.keys()
    for k in ma:
        assert ma[k] == pytest.approx(mb[k], rel=1e-5, abs=1e-6), k
