//! Opening sessions. (Being written.)
