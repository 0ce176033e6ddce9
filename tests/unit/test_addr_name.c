/* Server addresses with host names: what td_addr_parse_name takes ("HOST:port") and refuses. */
#include "td/config.h"

#include <string.h>

#include "t.h"
#include "td/common-t.h"

static void host_names_with_a_port_are_names(void) {
    td_addr_t a;
    T_EQ_INT(td_addr_parse_name("blue.internal:8080", &a), 0);
    T_EQ_STR(a.text, "blue.internal:8080");
    T_EQ_INT((int)a.salen, 0);
    T_CHECK(td_addr_is_name(&a));
    T_EQ_INT(td_addr_parse_name("localhost:1", &a), 0);
    T_EQ_INT(td_addr_parse_name("a-b_c.x9.example:65535", &a), 0);
    T_EQ_INT(td_addr_parse_name("9lives.example:80", &a), 0);
}

static void what_is_not_a_host_name_is_refused(void) {
    td_addr_t a;
    memset(&a, 0x5a, sizeof(a));
    T_EQ_INT(td_addr_parse_name("blue.internal", &a), TD_EINVAL);   /* no port */
    T_EQ_INT(td_addr_parse_name("blue.internal:", &a), TD_EINVAL);  /* empty port */
    T_EQ_INT(td_addr_parse_name("blue.internal:0", &a), TD_EINVAL); /* port 1..65535 */
    T_EQ_INT(td_addr_parse_name("blue.internal:65536", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("blue.internal:8o", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name(":80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("blue..internal:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name(".blue:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("-blue:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("blue-:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("bl ue:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("10.0.0.300:80", &a), TD_EINVAL); /* digits only: no name */
    T_EQ_INT(td_addr_parse_name("[::1]:80", &a), TD_EINVAL);
    /* 63 characters at most, as every address's text. */
    T_EQ_INT(
        td_addr_parse_name("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:80", &a),
        TD_EINVAL);
    T_EQ_INT((int)a.salen, 0x5a5a5a5a); /* untouched */
}

static void a_trailing_dot_is_a_fully_qualified_name(void) {
    td_addr_t a;
    T_EQ_INT(td_addr_parse_name("green.internal.:80", &a), 0);
    T_EQ_STR(a.text, "green.internal.:80");
    T_EQ_INT(td_addr_parse_name("localhost.:80", &a), 0);
    T_EQ_INT(td_addr_parse_name(".:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("green..:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("green-.:80", &a), TD_EINVAL);
    T_EQ_INT(td_addr_parse_name("10.0.0.1.:80", &a), TD_EINVAL); /* digits only: no name */
}

static void an_ip_address_is_not_a_name(void) {
    td_addr_t a;
    T_EQ_INT(td_addr_parse("127.0.0.2:8080", &a), 0);
    T_CHECK(!td_addr_is_name(&a));
}

int main(void) {
    host_names_with_a_port_are_names();
    what_is_not_a_host_name_is_refused();
    a_trailing_dot_is_a_fully_qualified_name();
    an_ip_address_is_not_a_name();
    return t_done("addr_name");
}
