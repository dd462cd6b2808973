// Intentionally empty: every wrapper is `static inline` in include/CLibev.h. SwiftPM needs one
// source file to build a C target.
#include "CLibev.h"
