# qacloud role: CloudStack management server (cloudstack-management + usage, MySQL, NFS
# client) with Marvin's unauthenticated integration API port (8096) enabled.
# Packages come from the pool's QA VM repository (the commit under test, steps/cloudstack.py).
# Facts used: $facts['qacloud_repo_url'] (the QA VM's package repository).
class qacloud::management (
  String $repo_url = $facts['qacloud_repo_url'].lest || { 'http://qavm/repo/current' },
  String $db_password = 'cloud',
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

  package { ['mysql-server', 'nfs-utils']:
    ensure => installed,
  }

  service { 'mysqld':
    ensure  => running,
    enable  => true,
    require => Package['mysql-server'],
  }

  package { ['cloudstack-management', 'cloudstack-usage', 'cloudstack-common']:
    ensure  => latest,
    require => File['/etc/yum.repos.d/qacloud-cloudstack.repo'],
  }

  exec { 'cloudstack-setup-databases':
    command => "/usr/bin/cloudstack-setup-databases cloud:${db_password}@localhost --deploy-as=root",
    creates => '/etc/cloudstack/management/.qacloud-db-deployed',
    require => [Package['cloudstack-management'], Service['mysqld']],
    notify  => Exec['integration-api-port'],
  }

  # Marvin talks to the unauthenticated integration port (notes/cloudstack.md §1.4)
  exec { 'integration-api-port':
    command     => "/usr/bin/mysql -ucloud -p${db_password} cloud -e \"UPDATE configuration SET value='8096' WHERE name='integration.api.port'\"",
    refreshonly => true,
    before      => Exec['cloudstack-setup-management'],
  }

  exec { 'cloudstack-setup-management':
    command => '/usr/bin/cloudstack-setup-management && touch /etc/cloudstack/management/.qacloud-db-deployed',
    creates => '/etc/cloudstack/management/.qacloud-db-deployed',
    require => Exec['cloudstack-setup-databases'],
  }

  service { ['cloudstack-management', 'cloudstack-usage']:
    ensure  => running,
    enable  => true,
    require => Exec['cloudstack-setup-management'],
  }
}

include qacloud::management
