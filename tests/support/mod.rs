#![allow(dead_code)]
pub mod certs;
pub mod client;
pub mod relay;
pub mod upstream;
pub mod ops;
