// The negative ELBO of an image VAE on the CPU: csrc/common/image_elbo.h over this backend's
// likelihood and KL kernels (each likelihood's gradient written in the same pass as its value).
#include "common/image_elbo.h"

namespace fastvae {
namespace cpu {

FASTVAE_IMAGE_ELBO_LOSS

}  // namespace cpu
}  // namespace fastvae
