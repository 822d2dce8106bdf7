//! Disk images with other systems on them, for installer tests. (Being built.)
