#ifndef BOTTLENECK_CPNG_SHIM_H
#define BOTTLENECK_CPNG_SHIM_H
#include <png.h>
#endif
