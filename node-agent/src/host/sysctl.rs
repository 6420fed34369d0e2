//! Reading and writing sysctls through /proc/sys.
