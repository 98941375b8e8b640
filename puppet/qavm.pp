# qacloud role: the pool's QA VM (Buildbot worker): Cobbler, dnsmasq (DHCP/DNS for the isolated
# pool network), squid (the ONLY way out of the isolated network), NFS exports for primary and
# secondary storage, and the package repository served to the pool's hosts.
# Facts used: $facts['qacloud_subnet'] (CIDR), $facts['qacloud_dhcp_range'] ("start,end"),
# $facts['qacloud_export_root'] (default /export), $facts['qacloud_repo_root'].
class qacloud::qavm (
  String $subnet      = $facts['qacloud_subnet'].lest || { '10.0.0.0/24' },
  String $dhcp_range  = $facts['qacloud_dhcp_range'].lest || { '10.0.0.100,10.0.0.199' },
  String $export_root = $facts['qacloud_export_root'].lest || { '/export' },
  String $repo_root   = $facts['qacloud_repo_root'].lest || { '/srv/qacloud/repo' },
) {
  package { ['cobbler', 'dnsmasq', 'squid', 'nfs-kernel-server', 'createrepo-c', 'nginx']:
    ensure => installed,
  }

  file { '/etc/dnsmasq.d/qacloud.conf':
    ensure  => file,
    content => "dhcp-range=${dhcp_range},12h\ndhcp-boot=pxelinux.0\nenable-tftp\ntftp-root=/var/lib/tftpboot\n",
    require => Package['dnsmasq'],
    notify  => Service['dnsmasq'],
  }

  # Hosts reach the Internet (template and test image downloads) only through squid.
  file { '/etc/squid/conf.d/qacloud.conf':
    ensure  => file,
    content => "acl qacloud_pool src ${subnet}\nhttp_access allow qacloud_pool\nhttp_access deny all\nhttp_port 3128\n",
    require => Package['squid'],
    notify  => Service['squid'],
  }

  file { [$export_root, "${export_root}/primary", "${export_root}/secondary"]:
    ensure => directory,
    mode   => '0755',
  }

  file { '/etc/exports':
    ensure  => file,
    content => "${export_root}/primary ${subnet}(rw,async,no_root_squash,no_subtree_check)\n${export_root}/secondary ${subnet}(rw,async,no_root_squash,no_subtree_check)\n",
    require => File["${export_root}/primary", "${export_root}/secondary"],
    notify  => Exec['exportfs'],
  }

  exec { 'exportfs':
    command     => '/usr/sbin/exportfs -ra',
    refreshonly => true,
    require     => Package['nfs-kernel-server'],
  }

  file { $repo_root:
    ensure => directory,
    mode   => '0755',
  }

  service { ['dnsmasq', 'squid', 'nfs-kernel-server', 'cobblerd', 'nginx']:
    ensure  => running,
    enable  => true,
    require => Package['cobbler', 'dnsmasq', 'squid', 'nfs-kernel-server', 'nginx'],
  }
}

include qacloud::qavm
