//! Lock-free SPSC rings, the N×N mesh between shards, and the "parked" flags that
//! tell a producer when the consumer needs a doorbell. Imports no other broker module.

mod mesh;
mod spsc;

pub use mesh::{mesh, Endpoint, SendOutcome};
pub use spsc::{channel, Consumer, Producer};
