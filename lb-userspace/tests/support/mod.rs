pub mod kernel;
pub mod packets;
