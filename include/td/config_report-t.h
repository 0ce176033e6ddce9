/* Types of config problem reporting (config_report.c): the path being walked and the problems
 * found on it. Internal to the config module. */
#ifndef TD_CONFIG_REPORT_T_H
#define TD_CONFIG_REPORT_T_H

#include <stddef.h>

#include "td/config_pos.h"

#define TD_CONFIG_MAX_PROBLEMS 100
#define TD_CONFIG_MAX_PATH 8 /* deepest path in the schema: backends[i].servers[j].address */

/* Where a problem stands: at the value of the current path, or at its key. */
enum { TD_CONFIG_AT_VALUE = 0, TD_CONFIG_AT_KEY = 1 };

typedef struct td_config_problem_s {
    int line, col;
    size_t seq; /* order found, to keep the sort stable */
    char *msg;  /* owned */
} td_config_problem_t;

/* The problems of one document. Zero-initialise, set text and len, then push and pop the path
 * while walking; report; flush at the end. */
typedef struct td_config_report_s {
    const char *text; /* borrowed: the raw document, for positions */
    size_t len;
    td_config_seg_t path[TD_CONFIG_MAX_PATH]; /* where the walk is; keys borrowed */
    size_t depth;
    td_config_problem_t *problems; /* owned */
    size_t num_problems, cap_problems;
    size_t dropped; /* problems beyond TD_CONFIG_MAX_PROBLEMS */
    int oom;        /* out of memory while walking or reporting */
} td_config_report_t;

#endif
