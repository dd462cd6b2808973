// The static inline wrappers live in include/CLibev.h. This file holds the few wrappers that need
// feature macros the Swift importer's view of glibc doesn't have (accept4 needs _GNU_SOURCE).
#define _GNU_SOURCE
#include <sys/socket.h>
#include "CLibev.h"

int ioloop_accept4(int fd, int flags) { return accept4(fd, NULL, NULL, flags); }
