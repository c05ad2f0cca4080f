!> colnn_l96 CONFIG.nml: the two-scale Lorenz-96 host (see l96_host). Run under mpirun for
!> more than one rank. `colnn_l96 --defaults` prints every namelist key with its default,
!> `colnn_l96 --print-config CONFIG.nml` the values a run of CONFIG.nml would use.
program colnn_l96
  use, intrinsic :: iso_fortran_env, only: error_unit
  use mpi_f08, only: MPI_Init, MPI_Finalize
  use, intrinsic :: iso_fortran_env, only: output_unit
  use l96_host, only: l96_host_main, l96_write_defaults, l96_print_config
  implicit none
  character(len=4096) :: path, config
  character(len=1024) :: errmsg
  integer :: code, ierr
  call MPI_Init(ierr)
  call get_command_argument(1, path)
  if (command_argument_count() == 1 .and. path == '--defaults') then
    call l96_write_defaults(output_unit)
    code = 0
  else if (command_argument_count() == 2 .and. path == '--print-config') then
    call get_command_argument(2, config)
    call l96_print_config(trim(config), output_unit, code, errmsg)
    if (code /= 0) then
      write (error_unit, '(a)') 'colnn_l96: '//trim(errmsg)
      code = 1
    end if
  else if (command_argument_count() /= 1 .or. path(1:1) == '-') then
    write (error_unit, '(a)') 'usage: colnn_l96 CONFIG.nml | --defaults | --print-config CONFIG.nml'
    code = 2
  else
    call l96_host_main(trim(path), code)
  end if
  call MPI_Finalize(ierr)
  if (code /= 0) stop code, quiet=.true.
end program colnn_l96
