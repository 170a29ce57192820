//! The lab: runs of the real `provisioner` binary against the simulator that measure it.
//!
//! * [`chaos`]: a seeded reliability run under crashes and faults, with an audit of the
//!   invariants (nothing lost, nothing duplicated, nothing stuck).
//! * [`bench`]: throughput, latency, CPU, memory, API speed and catch-up.
//! * [`floor`]: the CPU an Order's round trips cost with no protocol, the bound under the
//!   daemon's CPU per Order at latency.
//!
//! Neither ships in the product image: they drive the daemon as a child process, the way an
//! operator's supervisor would, so what they measure is the binary that ships.

pub mod bench;
pub mod chaos;
pub mod floor;
pub mod support;
