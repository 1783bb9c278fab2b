pub mod packets;
