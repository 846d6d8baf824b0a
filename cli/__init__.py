"""The xraynet command line (installed as ``xraynet.cli``)."""
