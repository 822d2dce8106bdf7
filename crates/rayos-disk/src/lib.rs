//! Disks: block-device and image-file enumeration, GPT reading and writing,
//! filesystem probing, free-region search and classification of what a disk
//! holds (RayOS install, Windows, Linux, ESP).
