//! rayos init: PID 1 of the RayOS image, a linear sequence of named steps.
