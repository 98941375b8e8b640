# qacloud role: KVM hypervisor (cloudstack-agent, libvirt, bridges cloudbr0/cloudbr1).
# Facts used: $facts['qacloud_repo_url'], $facts['qacloud_nic'] (management NIC),
# $facts['qacloud_guest_nic'] (guest traffic NIC; defaults to the management NIC).
class qacloud::kvm (
  String $repo_url  = $facts['qacloud_repo_url'].lest || { 'http://qavm/repo/current' },
  String $nic       = $facts['qacloud_nic'].lest || { 'eth0' },
  String $guest_nic = $facts['qacloud_guest_nic'].lest || { $facts['qacloud_nic'].lest || { 'eth0' } },
) {
  file { '/etc/yum.repos.d/qacloud-cloudstack.repo':
    ensure  => file,
    content => "[qacloud-cloudstack]
name=CloudStack built by qacloud from the commit under test
baseurl=${repo_url}
enabled=1
gpgcheck=0
",
  }

  package { ['qemu-kvm', 'libvirt', 'bridge-utils', 'nfs-utils']:
    ensure => installed,
  }

  package { 'cloudstack-agent':
    ensure  => latest,
    require => [File['/etc/yum.repos.d/qacloud-cloudstack.repo'], Package['qemu-kvm', 'libvirt']],
  }

  file { '/etc/libvirt/libvirtd.conf':
    ensure  => file,
    content => "listen_tls = 0\nlisten_tcp = 1\ntcp_port = \"16509\"\nauth_tcp = \"none\"\nmdns_adv = 0\n",
    require => Package['libvirt'],
    notify  => Service['libvirtd'],
  }

  service { 'libvirtd':
    ensure => running,
    enable => true,
  }

  # cloudbr0: management + public, cloudbr1: guest (HV_LABELS in steps/cloudstack.py)
  file { '/etc/sysconfig/network-scripts/ifcfg-cloudbr0':
    ensure  => file,
    content => "DEVICE=cloudbr0\nTYPE=Bridge\nONBOOT=yes\nBOOTPROTO=dhcp\nSTP=no\n",
  }
  file { "/etc/sysconfig/network-scripts/ifcfg-${nic}":
    ensure  => file,
    content => "DEVICE=${nic}\nONBOOT=yes\nBRIDGE=cloudbr0\n",
    require => File['/etc/sysconfig/network-scripts/ifcfg-cloudbr0'],
  }
  file { '/etc/sysconfig/network-scripts/ifcfg-cloudbr1':
    ensure  => file,
    content => "DEVICE=cloudbr1\nTYPE=Bridge\nONBOOT=yes\nBOOTPROTO=none\nSTP=no\n",
  }
  if $guest_nic != $nic {
    file { "/etc/sysconfig/network-scripts/ifcfg-${guest_nic}":
      ensure  => file,
      content => "DEVICE=${guest_nic}\nONBOOT=yes\nBRIDGE=cloudbr1\n",
      require => File['/etc/sysconfig/network-scripts/ifcfg-cloudbr1'],
    }
  }

  service { 'cloudstack-agent':
    enable  => true,
    require => [Package['cloudstack-agent'], Service['libvirtd']],
  }
}

include qacloud::kvm
