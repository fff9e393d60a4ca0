//! Lock-free SPSC rings, the N×N mesh between shards, and the "parked" flags that
//! tell a producer when the consumer needs a doorbell. Imports no other broker module.

mod mesh;
mod spsc;
mod sync;

pub use mesh::{mesh, Endpoint, MeshStats, RingError, SendError, SendOutcome, WakeSet, MAX_SHARDS};
pub use spsc::{channel, Consumer, Producer};
pub use sync::CachePadded;
