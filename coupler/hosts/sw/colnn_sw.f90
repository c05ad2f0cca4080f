!> colnn_sw CONFIG.nml | --defaults | --print-config CONFIG.nml: the 2-D shallow-water host
!> (sw_host), run by host_driver. Run under mpirun for more than one rank.
program colnn_sw
  use host_driver, only: host_cli
  use sw_host, only: sw_host_t
  implicit none
  type(sw_host_t) :: host
  call host_cli(host, 'colnn_sw')
end program colnn_sw
