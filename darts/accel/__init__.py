"""The same math, faster: C kernels, fused autograd functions, edge batching, CUDA graphs and
the device-resident loader. Nothing in the model depends on this package for correctness."""
