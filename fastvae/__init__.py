"""fastvae: fused C++/CUDA kernels for variational autoencoder losses."""
