//! Shared test support: real parts (qemu-img, and later Azurite and the fake ARM), never
//! mocks of them. Each test binary uses a subset.
#![allow(dead_code)]

pub mod image;
pub mod tools;
