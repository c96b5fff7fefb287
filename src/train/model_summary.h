// A module tree with parameter counts, printed at the start of training (the reference's
// RichModelSummary). Built from the model's parameter table: names are grouped by module prefix and
// the identical encoder layers are folded into one row "esm.encoder.layer.{0..L-1}".
#pragma once
#include <string>
#include <vector>

#include "model/esm2.h"

namespace esm2 {

std::string format_param_count(double n);  // 1234 → "1.2 K", 7.5e6 → "7.5 M"
std::string model_summary(const ModelConfig& cfg, const std::vector<ParamInfo>& params);

}  // namespace esm2
