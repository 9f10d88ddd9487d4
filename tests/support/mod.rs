#![allow(dead_code)]
pub mod certs;
pub mod client;
pub mod dkim;
pub mod oauth;
pub mod ops;
pub mod panel;
pub mod relay;
pub mod upstream;
