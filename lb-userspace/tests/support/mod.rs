pub mod fake_apiserver;
pub mod kernel;
pub mod packets;
