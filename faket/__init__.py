"""FakET: simulate cryo-ET tilt-series by neural style transfer (Harar et al., arXiv 2304.02011).

The package is the method as a library, one module per stage:
:mod:`faket.projection` (noiseless projections), :mod:`faket.noise` (NOISY /
CONTENT / BASELINE tilt-series), :mod:`faket.nst` (style transfer with
:mod:`faket.vgg`), :mod:`faket.reconstruction` (weighted back-projection),
plus :mod:`faket.phantom` (synthetic data), :mod:`faket.io` and :mod:`faket.cli`.
"""

__version__ = "0.1.0"

# FAKET_REPRODUCIBLE=1 pins torch's CPU kernels; it must act before torch is imported.
from .reproducible import pin_from_environment as _pin_from_environment  # noqa: E402

_pin_from_environment()
