#include "comm/nccl/nccl_communicator.h"

namespace esm2 {

void register_nccl_communicator() {
  register_communicator(
      {.name = "nccl",
       .join_launched_job = nullptr,
       .new_id = nccl_unique_id_hex,
       .join_with_id = [](const std::string& id, int rank, int world, Backend& backend, double collective_timeout_s,
                          std::unique_ptr<Communicator> bootstrap) -> std::unique_ptr<Communicator> {
         return std::make_unique<NcclCommunicator>(id, rank, world, backend, collective_timeout_s,
                                                   std::move(bootstrap));
       }});
}

}  // namespace esm2
