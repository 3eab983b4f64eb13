// The negative ELBO of an image VAE on CUDA (and emulated in fastvae._C_emu): csrc/common/image_elbo.h
// over this backend's likelihood and KL kernels; host code only, no kernel of its own.
#include "common/image_elbo.h"

namespace fastvae {
namespace cuda {

FASTVAE_IMAGE_ELBO_LOSS

}  // namespace cuda
}  // namespace fastvae
