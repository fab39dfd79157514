# The installed C++ package (issue 16): the client library, its public headers, a CMake package
# (find_package(keylock CONFIG) -> keylock::client) and a pkg-config file (keylock.pc).
#
#   cmake --install build/release --prefix /usr/local
#   find_package(keylock CONFIG REQUIRED)  +  target_link_libraries(app PRIVATE keylock::client)
#   g++ -std=c++20 app.cpp $(pkg-config --cflags --libs keylock)
include(CMakePackageConfigHelpers)

set(KEYLOCK_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/keylock)

install(TARGETS keylock_client keylock_proto EXPORT keylockTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT dev
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/keylock
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT dev FILES_MATCHING PATTERN "*.hpp")
install(EXPORT keylockTargets NAMESPACE keylock:: DESTINATION ${KEYLOCK_CMAKE_DIR} COMPONENT dev)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/keylockConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/keylockConfig.cmake
                              INSTALL_DESTINATION ${KEYLOCK_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/keylockConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/keylockConfig.cmake
              ${PROJECT_BINARY_DIR}/keylockConfigVersion.cmake
        DESTINATION ${KEYLOCK_CMAKE_DIR} COMPONENT dev)

# The .pc file finds its prefix from where it lies (${pcfiledir}), so `cmake --install --prefix`
# may choose the prefix at install time, as the CMake package's files do.
file(RELATIVE_PATH KEYLOCK_PC_UP /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" KEYLOCK_PC_UP "${KEYLOCK_PC_UP}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/keylock.pc.in ${PROJECT_BINARY_DIR}/keylock.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/keylock.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
        COMPONENT dev)
