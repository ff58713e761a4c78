"""varlib: VAR (next-scale prediction) from scratch, numerically the same as the official code.

Modules, in reading order:

* ``scales``      the token pyramid: scale sizes, token ranges, the scale-causal mask
* ``quant``       the multi-scale residual quantizer (one codebook, coarse to fine)
* ``vqvae``       the convolutional tokenizer around it
* ``model``       the VAR transformer (AdaLN blocks, teacher-forced forward)
* ``sampler``     KV-cached sampling with classifier-free guidance; zero-shot editing
* ``checkpoints`` released configurations, checking, downloading and loading weights
* ``bench``       ``python -m varlib.bench``: speed of sampling and training on this machine
* ``data``        data sets that need no download (OpenMoji emoji32, procedural shapes, folders)
* ``optim``       the official parameter groups and learning-rate / weight-decay schedules
* ``train``       ``python -m varlib.train``: training the tokenizer and VAR (CPU, or DDP via torchrun)
* ``shipped``     the small emoji32 models shipped with the package (``varlib.pretrained("emoji32")``);
                  ``evaluate`` measures them
"""
from .checkpoints import RELEASED, build_released, download, load_pair, load_released
from .model import VAR, VARConfig
from .shipped import pretrained, pretrained_info
from .sampler import EditSpec, SampleOutput, box_mask, sample
from .scales import PATCH_NUMS_256, PATCH_NUMS_512, scale_causal_mask, scale_ids
from .utils import seed_everything
from .vqvae import VQVAE, VQVAEConfig

__version__ = "0.1.0"
