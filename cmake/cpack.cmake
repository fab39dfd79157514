# Debian packages (issue 16), built from the package preset, whose prefix is /usr:
#
#   cmake --preset package && cmake --build --preset package && cpack --preset package
#
# keylockd        the daemon, the keylock CLI, /etc/keylock/keylockd.json (a conffile), the
#                 systemd unit, /var/lib/keylock; postinst creates the keylock system user.
# libkeylock-dev  the static client library, its headers, the CMake package and keylock.pc.
#
# tests/package/deb.sh checks what the packages hold and runs them unpacked (make test-packages).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME keylock)
set(CPACK_PACKAGE_VENDOR keylock)
set(CPACK_PACKAGE_CONTACT "keylock maintainers <maintainers@keylock.invalid>")
set(CPACK_PACKAGE_HOMEPAGE_URL "https://keylock.invalid/")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
set(CPACK_PACKAGE_DIRECTORY ${PROJECT_BINARY_DIR})
set(CPACK_STRIP_FILES ON)

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_COMPONENTS_ALL daemon dev)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
# The files' owner in the archive is root; the maintainer scripts' mode is 0755, the rest 0644.
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)

set(CPACK_DEBIAN_DAEMON_PACKAGE_NAME keylockd)
set(CPACK_DEBIAN_DAEMON_PACKAGE_SECTION net)
set(CPACK_DEBIAN_DAEMON_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_DAEMON_PACKAGE_DEPENDS "adduser")
set(CPACK_COMPONENT_DAEMON_DESCRIPTION
    "lock server with FIFO leases and fencing tokens
keylockd is a lock server: a function runs one call at a time per key, across
processes and hosts. Waiters queue in FIFO order and are granted the moment a
lock frees, leases expire, and every grant carries a fencing token. This
package holds the daemon, its systemd unit and configuration, and the keylock
command-line client.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME libkeylock-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# What keylockConfig.cmake's find_dependency calls and keylock.pc's Requires need.
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libboost-dev (>= 1.74), libssl-dev, nlohmann-json3-dev (>= 3.10)")
set(CPACK_COMPONENT_DEV_DESCRIPTION
    "C++ client library of the keylock lock server (development files)
The C++20 client of keylockd: with_lock(key, fn), a lock decorator and RAII
leases with automatic renewal, over TCP or TLS. This package holds the static
library, its headers, a CMake package (find_package(keylock)) and a pkg-config
file (keylock.pc).")
# CPack puts CPACK_PACKAGE_DESCRIPTION_SUMMARY before each package's description unless it is
# CPack's default summary; each package has its own synopsis (its description's first line).
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${CMAKE_PROJECT_NAME} built using CMake")

# Maintainer scripts and the conffile list of keylockd.
set(KEYLOCK_DEB_DIR ${PROJECT_BINARY_DIR}/debian)
configure_file(${PROJECT_SOURCE_DIR}/cmake/debian/conffiles.in ${KEYLOCK_DEB_DIR}/conffiles @ONLY)
foreach(script postinst prerm postrm)
  configure_file(${PROJECT_SOURCE_DIR}/cmake/debian/${script} ${KEYLOCK_DEB_DIR}/${script}
                 COPYONLY FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ
                 GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
endforeach()
set(CPACK_DEBIAN_DAEMON_PACKAGE_CONTROL_EXTRA
    ${KEYLOCK_DEB_DIR}/conffiles ${KEYLOCK_DEB_DIR}/postinst ${KEYLOCK_DEB_DIR}/prerm
    ${KEYLOCK_DEB_DIR}/postrm)

# Debian policy's documentation of each package: its copyright file and changelog.
add_custom_command(OUTPUT ${KEYLOCK_DEB_DIR}/changelog.Debian.gz
                   COMMAND gzip -9n -c ${PROJECT_SOURCE_DIR}/cmake/debian/changelog
                           > ${KEYLOCK_DEB_DIR}/changelog.Debian.gz
                   DEPENDS ${PROJECT_SOURCE_DIR}/cmake/debian/changelog VERBATIM)
add_custom_target(keylock_deb_changelog ALL DEPENDS ${KEYLOCK_DEB_DIR}/changelog.Debian.gz)
# lintian-overrides: the tags left on purpose, each with its reason in the file.
foreach(pair daemon:keylockd dev:libkeylock-dev)
  string(REPLACE ":" ";" pair ${pair})
  list(GET pair 0 component)
  list(GET pair 1 package)
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/debian/copyright ${KEYLOCK_DEB_DIR}/changelog.Debian.gz
          DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/${package} COMPONENT ${component})
  install(FILES ${PROJECT_SOURCE_DIR}/cmake/debian/${package}.lintian-overrides
          DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/lintian/overrides RENAME ${package}
          COMPONENT ${component})
endforeach()

# Manual pages of keylockd and keylock, made from their --help by help2man (when installed:
# scripts/install-deps.sh installs it, and tests/package/deb.sh requires the pages).
find_program(KEYLOCK_HELP2MAN help2man)
function(keylock_man_page program name)
  if(NOT KEYLOCK_HELP2MAN)
    return()
  endif()
  set(page ${KEYLOCK_DEB_DIR}/${program}.1)
  add_custom_command(OUTPUT ${page}.gz
                     COMMAND ${KEYLOCK_HELP2MAN} --no-info --section 1 --name ${name}
                             --output ${page} $<TARGET_FILE:${program}>
                     COMMAND gzip -9nf ${page}
                     DEPENDS ${program} VERBATIM)
  add_custom_target(keylock_man_${program} ALL DEPENDS ${page}.gz)
  install(FILES ${page}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT daemon)
endfunction()
keylock_man_page(keylockd "keylock lock server")
keylock_man_page(keylock "run commands under keylockd locks, and look at the daemon")

include(CPack)
