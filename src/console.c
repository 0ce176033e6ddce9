/* The web console page (console/index.html), embedded in the binary so td serves it with no
 * files to install and no network: the assembler includes the file's bytes at build time. */
__asm__(".section .rodata\n"
        ".global td_console_html\n"
        ".type td_console_html, @object\n"
        "td_console_html:\n"
        ".incbin \"console/index.html\"\n"
        ".byte 0\n"
        ".previous\n");
