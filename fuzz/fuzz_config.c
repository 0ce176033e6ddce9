/* libFuzzer target: td_config_parse on arbitrary bytes. Besides memory safety (run with ASan and
 * UBSan), checks that whatever parses also round-trips: to_json, parse again, same JSON. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "td/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static FILE *devnull;
    td_config_t *c, *again;
    char *json, *json2;

    if (!devnull)
        devnull = fopen("/dev/null", "w");
    c = td_config_parse((const char *)data, size, "fuzz.json", devnull);
    if (!c)
        return 0;
    json = td_config_to_json(c);
    if (!json)
        abort();
    again = td_config_parse(json, strlen(json), "round-trip.json", stderr);
    if (!again)
        abort();
    json2 = td_config_to_json(again);
    if (!json2 || strcmp(json, json2) != 0)
        abort();
    free(json2);
    free(json);
    td_config_free(again);
    td_config_free(c);
    return 0;
}
