//! One module per role the binary can play.

pub mod coreapp;
pub mod gateway;
pub mod master;
pub mod upgrade;
pub mod webapp;
