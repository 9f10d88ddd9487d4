#![allow(dead_code)]
pub mod api;
pub mod browser;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod dkim;
pub mod dns;
pub mod oauth;
pub mod ops;
pub mod panel;
pub mod relay;
pub mod upstream;
pub mod webhook_receiver;
