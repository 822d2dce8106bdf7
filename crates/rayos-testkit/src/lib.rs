//! Test infrastructure: builds tiny Linux guests and disk images with other
//! systems on them for the integration and end-to-end tests.
