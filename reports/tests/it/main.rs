//! Integration tests of the reports crate: one binary, one module per area.

mod browser;
mod html_check;
mod render;
