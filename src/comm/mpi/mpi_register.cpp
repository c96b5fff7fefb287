#include "comm/mpi/mpi_communicator.h"

namespace esm2 {

void register_mpi_communicator() {
  register_communicator({.name = "mpi",
                         .join_launched_job = [](double collective_timeout_s) -> std::unique_ptr<Communicator> {
                           return std::make_unique<MpiCommunicator>(collective_timeout_s);
                         },
                         .new_id = nullptr,
                         .join_with_id = nullptr});
}

}  // namespace esm2
