/* Config problems for people: each is recorded against the path of the thing it is about (the
 * stack of keys and indices the walk keeps), turned into line:col by scanning the raw text
 * (config_pos.c) only then, on the error path, and printed in document order at the end. */
#include "td/config_report.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- text for messages ---- */

char *td_config_show(char *out, size_t size, const char *s, int quoted) {
    size_t o = 0, lim = size - 8; /* room for an escape, "...", the quote and the NUL */

    if (quoted)
        out[o++] = '"';
    for (; *s && o < lim; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7F || (quoted && (ch == '"' || ch == '\\'))) {
            if (ch == '"' || ch == '\\')
                o += (size_t)snprintf(out + o, size - o, "\\%c", ch);
            else
                o += (size_t)snprintf(out + o, size - o, "\\x%02x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    if (*s) {
        while (o > 1 && ((unsigned char)out[o - 1] & 0xC0) == 0x80)
            o--; /* don't leave half a character */
        if (o > 1 && ((unsigned char)out[o - 1] & 0xC0) == 0xC0)
            o--;
        memcpy(out + o, "...", 3);
        o += 3;
    }
    if (quoted)
        out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* ---- the path and problems ---- */

void td_config_report_push_key(td_config_report_t *x, const char *key) {
    if (x->depth < TD_CONFIG_MAX_PATH)
        x->path[x->depth] = (td_config_seg_t){key, 0};
    x->depth++;
}

void td_config_report_push_index(td_config_report_t *x, size_t index) {
    if (x->depth < TD_CONFIG_MAX_PATH)
        x->path[x->depth] = (td_config_seg_t){NULL, index};
    x->depth++;
}

void td_config_report_pop(td_config_report_t *x) {
    x->depth--;
}

void td_config_report(td_config_report_t *x, int at, const char *fmt, ...) {
    char msg[640], key[80];
    size_t n = 0, depth = x->depth < TD_CONFIG_MAX_PATH ? x->depth : TD_CONFIG_MAX_PATH;
    va_list ap;
    td_config_problem_t *p;

    if (x->num_problems == TD_CONFIG_MAX_PROBLEMS) {
        x->dropped++;
        return;
    }
    for (size_t i = 0; i < depth && n < 256; i++) {
        if (x->path[i].key)
            n += (size_t)snprintf(msg + n, sizeof msg - n, "%s%s", i ? "." : "",
                                  td_config_show(key, sizeof key, x->path[i].key, 0));
        else
            n += (size_t)snprintf(msg + n, sizeof msg - n, "[%zu]", x->path[i].index);
    }
    if (n)
        n += (size_t)snprintf(msg + n, sizeof msg - n, ": ");
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof msg - n, fmt, ap);
    va_end(ap);

    if (x->num_problems == x->cap_problems) {
        size_t cap = x->cap_problems ? 2 * x->cap_problems : 8;
        td_config_problem_t *np = realloc(x->problems, cap * sizeof *np);
        if (!np) {
            x->oom = 1;
            return;
        }
        x->problems = np;
        x->cap_problems = cap;
    }
    p = &x->problems[x->num_problems];
    p->msg = strdup(msg);
    if (!p->msg) {
        x->oom = 1;
        return;
    }
    p->seq = x->num_problems++;
    td_config_locate(x->text, x->len, x->path, depth, at == TD_CONFIG_AT_KEY, &p->line, &p->col);
}

static int by_position(const void *a, const void *b) {
    const td_config_problem_t *p = a, *q = b;

    if (p->line != q->line)
        return p->line < q->line ? -1 : 1;
    if (p->col != q->col)
        return p->col < q->col ? -1 : 1;
    return p->seq < q->seq ? -1 : p->seq > q->seq;
}

void td_config_report_flush(td_config_report_t *x, const char *name, FILE *errs) {
    size_t n = x->num_problems;

    qsort(x->problems, n, sizeof *x->problems, by_position);
    for (size_t i = 0; i < n; i++) {
        if (errs)
            fprintf(errs, "%s:%d:%d: %s\n", name, x->problems[i].line, x->problems[i].col,
                    x->problems[i].msg);
        free(x->problems[i].msg);
    }
    if (errs && x->dropped)
        fprintf(errs, "%s:%d:%d: %zu more problems not shown\n", name, x->problems[n - 1].line,
                x->problems[n - 1].col, x->dropped);
    if (errs && x->oom)
        fprintf(errs, "%s:0:0: out of memory\n", name);
    free(x->problems);
    x->problems = NULL;
}

void td_config_report_free(td_config_report_t *x) {
    for (size_t i = 0; i < x->num_problems; i++)
        free(x->problems[i].msg);
    free(x->problems);
    x->problems = NULL;
    x->num_problems = 0;
}

/* ---- suggestions ---- */

static int lower(int ch) {
    return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
}

/* Optimal string alignment distance (Levenshtein plus adjacent transpositions), ignoring ASCII
 * case; strings longer than 63 bytes are "far". */
static size_t distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b), d[64][64];

    if (la > 63 || lb > 63)
        return (size_t)-1;
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = lower(a[i - 1]) != lower(b[j - 1]), best = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) &&
                lower(a[i - 2]) == lower(b[j - 1]) && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[la][lb];
}

const char *td_config_suggest(const char *s, const char *const *names) {
    const char *best = NULL;
    size_t best_d = (size_t)-1;

    for (; *names; names++) {
        size_t d = distance(s, *names), allowed = strlen(*names) >= 5 ? 2 : 1;
        if (d <= allowed && d < best_d) {
            best = *names;
            best_d = d;
        }
    }
    return best;
}

void td_config_join(char *out, size_t size, const char *const *names) {
    size_t n = 0;

    out[0] = '\0';
    for (size_t i = 0; names[i] && n < size; i++)
        n += (size_t)snprintf(out + n, size - n, "%s%s", i ? ", " : "", names[i]);
}
