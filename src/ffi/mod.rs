//! The C surface (see include/wspush.h).
