// libvirt's public API (libvirt-dev), read-only use: domain names, UUIDs and statistics for `kvmscope top`.
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
