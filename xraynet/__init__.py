"""xraynet: a hand-built convolutional network for chest X-ray screening.

Heavy modules (NumPy kernels, Numba, h5py) are imported where they are used,
so that `import xraynet` and `xraynet --help` stay fast.
"""
__version__ = "0.1.0"
