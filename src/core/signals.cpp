#include "core/signals.h"

#include <atomic>
#include <csignal>

namespace esm2 {
namespace {
// A signal handler may only touch lock-free atomics; this is the one process-wide state it needs.
std::atomic<int> g_stop_signal{0};
struct sigaction g_old_term, g_old_int;
void on_signal(int sig) { g_stop_signal.store(sig); }
}  // namespace

StopSignal::StopSignal() {
  g_stop_signal.store(0);
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

StopSignal::~StopSignal() {
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
}

bool StopSignal::requested() const { return g_stop_signal.load() != 0; }
int StopSignal::signal_number() const { return g_stop_signal.load(); }

}  // namespace esm2
