#![allow(dead_code)]
pub mod certs;
pub mod client;
pub mod oauth;
pub mod relay;
pub mod upstream;
