// AdamW's hyperparameters (the reference's train_esm2 flags; TrainConfig carries one of these).
#pragma once

namespace esm2 {

struct OptimizerConfig {
  double beta1 = 0.9, beta2 = 0.98, eps = 1e-8;
  double weight_decay = 0.01;
  bool decay_embeddings = false;  // by convention embeddings are not decayed
  double clip_grad = 1.0;         // global-norm clipping; <= 0 disables
};

}  // namespace esm2
