#![allow(dead_code)]
pub mod certs;
pub mod upstream;
