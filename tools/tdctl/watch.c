/* tdctl: what the deploy commands (drain, switch) need while they watch td: a monotonic clock,
 * pauses, SIGINT and SIGTERM caught, and a progress line. */

#include "tdctl.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Set by SIGINT and SIGTERM while a command watches td: stop watching. */
volatile sig_atomic_t interrupted;

/* The smaller of a and b (min_s() without libm, which tdctl does not link). */
double min_s(double a, double b) {
    return a < b ? a : b;
}

double now_s(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleeps s seconds, or less when a signal comes (the caller looks at `interrupted`). */
void pause_s(double s) {
    struct timespec ts;

    if (s <= 0)
        return;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    nanosleep(&ts, NULL);
}

static void on_signal(int sig) {
    (void)sig;
    interrupted = 1;
}

/* From now on SIGINT and SIGTERM set `interrupted` instead of ending tdctl. */
void catch_signals(void) {
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

void progress_init(progress_t *p) {
    memset(p, 0, sizeof(*p));
    p->tty = isatty(STDOUT_FILENO);
}

void progress_show(progress_t *p, const char *line) {
    if (strcmp(line, p->last) == 0)
        return;
    snprintf(p->last, sizeof(p->last), "%s", line);
    if (p->tty)
        printf("\r\033[K%s", line);
    else
        printf("%s\n", line);
    p->open = p->tty;
    fflush(stdout);
}

/* Ends the progress: what follows starts on a line of its own. */
void progress_end(progress_t *p) {
    if (p->open)
        putchar('\n');
    p->open = false;
    p->last[0] = '\0';
    fflush(stdout);
}
