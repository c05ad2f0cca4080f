!> colnn_l96 CONFIG.nml | --defaults | --print-config CONFIG.nml: the two-scale Lorenz-96 host
!> (l96_host), run by host_driver. Run under mpirun for more than one rank.
program colnn_l96
  use host_driver, only: host_cli
  use l96_host, only: l96_host_t
  implicit none
  type(l96_host_t) :: host
  call host_cli(host, 'colnn_l96')
end program colnn_l96
