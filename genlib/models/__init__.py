"""Model families (single-device, Ray-free): DCGAN, VAE, PixelRNN."""
