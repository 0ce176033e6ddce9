/* td's version: td --version, tdctl --version, a cluster node's membership key, the Debian
 * package (the Makefile reads it from here and checks debian/changelog against it). */
#ifndef TD_VERSION_H
#define TD_VERSION_H

#define TD_VERSION "0.4.0"

#endif
